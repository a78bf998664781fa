//! Compiles plume.proto with a vendored protoc, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=plume.proto");
    tonic_prost_build::configure()
        // The dashboard's JSON API serialises the same replies as the gRPC API.
        .type_attribute(".plume.v1", "#[derive(serde::Serialize)]")
        // State enums travel as numbers; JSON shows their names (`succeeded`).
        .field_attribute(
            ".plume.v1.ExperimentSummary.state",
            "#[serde(serialize_with = \"crate::json::experiment_state\")]",
        )
        .field_attribute(
            ".plume.v1.RunSummary.state",
            "#[serde(serialize_with = \"crate::json::run_state\")]",
        )
        .field_attribute(
            ".plume.v1.MetricUpdate.run_state",
            "#[serde(serialize_with = \"crate::json::run_state\")]",
        )
        .field_attribute(
            ".plume.v1.AttemptInfo.state",
            "#[serde(serialize_with = \"crate::json::attempt_state\")]",
        )
        .compile_protos(&["plume.proto"], &["."])?;
    Ok(())
}
