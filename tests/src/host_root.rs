//! Fake host roots for the node-agent probes: good, missing, broken and hostile.
