// Package auth proves that both ends of a connection hold the job's token
// without sending it: an HMAC-SHA256 challenge–response in both directions.
// The store, the collective's bootstrap and its data connections all start
// with it, so a process without the token can neither join, read the
// store, nor inject bytes into a collective. It is not API.
//
// Wire (version 1), after any protocol-specific greeting:
//
//	A -> B: 32-byte random challenge cA
//	B -> A: 32-byte random challenge cB
//	A -> B: HMAC(token, "ringo-auth-v1" | role | cB | cA)   (32 bytes)
//	B -> A: HMAC(token, "ringo-auth-v1" | role | cA | cB)   (32 bytes)
//
// role is "dial" for A's proof and "accept" for B's, so a proof cannot be
// reflected back to the side that asked for it. Each side checks the other's
// proof with hmac.Equal. An empty token turns authentication off on both
// sides; a side with a token refuses a side without one, because the proof
// will not match.
package auth
