package redisstore

// DefaultsKeyForTest exposes the reverse default-sender index key to the black-box tests.
func (s *Store) DefaultsKeyForTest(tenant, mailboxID string) string {
	return s.tenantKeys(tenant).mbDefaults(mailboxID)
}
