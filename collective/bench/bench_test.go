package bench

import (
	"strings"
	"testing"
)

func TestValidateTransport(t *testing.T) {
	for _, tr := range []string{"tcp", "shm"} {
		c := DefaultConfig()
		c.Transport = tr
		if err := c.Validate(); err != nil {
			t.Errorf("--transport %s: %v", tr, err)
		}
	}
	c := DefaultConfig()
	c.Transport = "carrier-pigeon"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "tcp or shm") {
		t.Errorf("--transport carrier-pigeon: %v", err)
	}
}
