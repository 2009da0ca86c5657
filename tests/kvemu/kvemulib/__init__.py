"""kvemu: a local Azure Key Vault / Managed HSM emulator for tests."""
