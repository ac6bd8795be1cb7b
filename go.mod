module github.com/ambitmesh/ambit

go 1.26

require github.com/vishvananda/netns v0.0.5

require golang.org/x/sys v0.23.0 // indirect
