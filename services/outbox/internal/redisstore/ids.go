package redisstore

import (
	"crypto/rand"
	"encoding/base32"
	"hash/fnv"
)

// idAlphabet is the alphabet of email ids: lower-case base32 (RFC 4648).
const idAlphabet = "abcdefghijklmnopqrstuvwxyz234567"

var idEncoding = base32.NewEncoding(idAlphabet).WithPadding(base32.NoPadding)

// NewID draws a random email id: 16 random bytes as 26 characters of lower-case base32. With an
// idempotency key the id lands in the key's partition (IDForKey), so one script checks the key
// and writes the email. Drawing whole ids until one fits would take as many draws as there are
// partitions (300 µs a submit at 1024); instead the last two bytes are searched, from a random
// start, for a fit: they only change the last four characters, and FNV-1a hashes left to right,
// so each try hashes four characters.
func (l *Ledger) NewID(tenant, key string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	if key == "" {
		return idEncoding.EncodeToString(b[:])
	}
	want := uint32(l.Partition(tenant + "\x00" + key))
	buf := make([]byte, 26)
	for {
		idEncoding.Encode(buf, b[:])
		// Characters 0..21 hold bits 0..109: bytes 0..13 alone. Characters 22..25 hold bits
		// 110..127: the low two bits of byte 13, then bytes 14 and 15 (and two zero bits).
		h := fnv.New32a()
		_, _ = h.Write(buf[:22])
		head := h.Sum32()
		start := uint32(b[14])<<8 | uint32(b[15])
		for i := range uint32(1 << 16) {
			v := (start + i) & 0xffff
			x := uint32(b[13]&3)<<16 | v
			tail := [4]byte{idAlphabet[x>>13&31], idAlphabet[x>>8&31], idAlphabet[x>>3&31], idAlphabet[(x&7)<<2]}
			sum := head
			for _, c := range tail {
				sum ^= uint32(c)
				sum *= 16777619 // the 32-bit FNV prime
			}
			if sum%uint32(l.parts) == want {
				copy(buf[22:], tail[:])
				return string(buf)
			}
		}
		_, _ = rand.Read(b[:]) // no fit among 65,536 tails: at most 1024 partitions make it unheard of
	}
}
