"""The batched automatic-mask engine, the network interface it calls, and the base of the generators on it."""
