//! The gpu-arena command-line tool (placeholder).

fn main() {}
