"""Where file lists come from: plain URL lists, the Hugging Face Hub, manifests."""
