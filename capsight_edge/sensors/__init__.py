"""The cart's sensors on one clock: load cells, positioning, IMU, and the sensor log."""
