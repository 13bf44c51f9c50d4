"""Edge runtime: capture -> detect -> track -> embed -> publish. Torch-free."""
