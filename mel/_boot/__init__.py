"""Start-up files for child interpreters (see mel.compat.install_subprocess_fix)."""
