package redisstore

// DefaultsKeyForTest exposes the reverse default-sender index key to the black-box tests.
func DefaultsKeyForTest(tenant, mailboxID string) string {
	return tenantKeys(tenant).mbDefaults(mailboxID)
}
