package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"
)

// ParseState reads a static config in YAML or JSON:
//
//	workloads: [...]
//	services: [...]
//	policies: [...]
//
// Unknown fields are errors, so that a misspelt field is not silently
// ignored.
func ParseState(data []byte) (State, error) {
	// YAML to JSON, then JSON's strict decoding into the model.
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return State{}, fmt.Errorf("parse config: %w", err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		return State{}, fmt.Errorf("parse config: %w", err)
	}
	var st State
	if string(bytes.TrimSpace(js)) == "null" {
		return st, nil
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return State{}, fmt.Errorf("parse config: %w", err)
	}
	if err := st.Validate(); err != nil {
		return State{}, fmt.Errorf("parse config: %w", err)
	}
	return st, nil
}

// LoadFile reads the static config file at path into store. It is the
// development and test source, standing in for workload discovery.
func LoadFile(path string, store *Store) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config %s: %w", path, err)
	}
	st, err := ParseState(data)
	if err != nil {
		return fmt.Errorf("load %s: %w", path, err)
	}
	return store.Replace(st)
}
