//! Workflows compiled into the binary (`agent/embedded/*.yaml`, or the folder named by
//! `REACTOR_EMBED_DIR` at build time; see build.rs and the README). A file in the workflows
//! folder with the same workflow name overrides an embedded one.

/// (file name, YAML text) of every embedded workflow, sorted by file name.
pub const WORKFLOWS: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_workflows_validate() {
        for (file, text) in super::WORKFLOWS {
            if let Err(problems) = reactor_core::dsl::parse_workflow(file, text) {
                let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                panic!("{}", lines.join("\n"));
            }
        }
    }
}
