"""The Hugging Face-layout cache: repo store, inventory, state db, pull, availability."""
