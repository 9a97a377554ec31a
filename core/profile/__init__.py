"""The profile schema every part shares: run profiles as TOML, validated into dataclasses with errors that name
the field, and where profiles are found."""
