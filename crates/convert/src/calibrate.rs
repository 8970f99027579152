//! Importance-matrix calibration on our engine (in progress).
