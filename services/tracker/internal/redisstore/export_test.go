package redisstore

// EventsKeyForTest exposes a tenant's event stream key to the black-box tests.
func (s *Store) EventsKeyForTest(tenant string) string { return s.tenantKeys(tenant).events() }

// AddressKeyForTest exposes an address index key to the black-box tests.
func (s *Store) AddressKeyForTest(tenant, address string) string {
	return s.tenantKeys(tenant).address(address)
}
