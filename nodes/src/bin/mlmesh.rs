//! `mlmesh`: the mesh from the shell. See [`mlmesh_nodes::cli`] and `mlmesh --help`.
//!
//! ```text
//! mlmesh nodes
//! mlmesh sub 'train.**' --count 3
//! mlmesh call tracking.run.get '{"run":"0190f3c27c1a70008000000000000001"}'
//! ```

fn main() -> std::process::ExitCode {
    mlmesh_nodes::cli::main()
}
