"""Device backends: KV layout, per-step attention metadata and device-specific layer ops."""
