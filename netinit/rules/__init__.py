"""Rule text formats: iptables-save (one parser), native nftables render and parse. Pure."""
