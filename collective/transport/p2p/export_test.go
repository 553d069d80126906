package p2p

// Refused is how many connections t's allowlist has dropped after their
// handshake.
func Refused(t *Transport) int64 {
	if t.gater == nil {
		return 0
	}
	return t.gater.refused.Load()
}
