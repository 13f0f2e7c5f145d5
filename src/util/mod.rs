//! Small helpers shared by every capability.
