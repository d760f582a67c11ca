package redisstore

// EventsKeyForTest exposes a tenant's event stream key to the black-box tests.
func EventsKeyForTest(tenant string) string { return tenantKeys(tenant).events() }

// AddressKeyForTest exposes an address index key to the black-box tests.
func AddressKeyForTest(tenant, address string) string { return tenantKeys(tenant).address(address) }
