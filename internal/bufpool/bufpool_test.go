package bufpool

import "testing"

// TestClasses: Get takes the smallest class that holds n, whole, or
// makes n bytes past the largest; Put keeps only class-sized buffers and
// gives them back whole.
func TestClasses(t *testing.T) {
	c := New(4, 16)
	for _, tc := range []struct{ n, wantLen int }{{0, 4}, {4, 4}, {5, 16}, {16, 16}, {17, 17}} {
		if got := len(*c.Get(tc.n)); got != tc.wantLen {
			t.Errorf("Get(%d): got %d bytes, want %d", tc.n, got, tc.wantLen)
		}
	}
	b := c.Get(10)
	*b = (*b)[:3]
	c.Put(b)
	c.Put(nil)
	odd := make([]byte, 7)
	c.Put(&odd) // not a class's: dropped
	for range 100 {
		if got := c.Get(10); len(*got) != 16 || cap(*got) != 16 {
			t.Fatalf("Get after Put: got len %d cap %d, want 16 whole", len(*got), cap(*got))
		}
	}
	defer func() {
		if recover() == nil {
			t.Errorf("New(16, 4): no panic, want one for sizes not increasing")
		}
	}()
	New(16, 4)
}
