"""Built-in protocol files: one JSON file per dataset (classes, domains, class splits per shift)."""
