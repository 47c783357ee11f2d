"""Memory: the budget and its watchdog, the devices, and the peak-memory model."""
