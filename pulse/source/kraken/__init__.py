"""kraken trades: wire structs and the conversion to the domain record."""
