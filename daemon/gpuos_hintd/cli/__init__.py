"""gpuos-hintctl: look at what the daemon sees (live state over IPC, history from the store)."""
