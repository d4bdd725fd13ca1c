//! Images built here, FROM scratch, with buildah straight into CRI-O's
//! storage: the tests reach no registry, and buildah and CRI-O share
//! containers/storage (the same root, run root and vfs driver).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// An image to build: host files copied to paths in the image, and the
/// entrypoint.
pub struct ImageSpec<'a> {
    /// A reference under `localhost/`, so nothing ever tries to pull it.
    pub reference: &'a str,
    /// (file on this machine, its path in the image).
    pub files: Vec<(PathBuf, String)>,
    pub entrypoint: &'a str,
}

/// Builds `spec` into the storage of the CRI-O confined to `crio_dir`.
pub(super) fn build(crio_dir: &Path, spec: &ImageSpec) -> Result<(), Error> {
    let policy = crio_dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .map_err(|e| Error::io(&policy, e))?;
    let store = [
        format!("--root={}", crio_dir.join("storage").display()),
        format!("--runroot={}", crio_dir.join("runroot").display()),
        "--storage-driver=vfs".to_owned(),
    ];
    let container = buildah(&store, &["from", "scratch"])?;
    let container = container.trim();
    for (source, target) in &spec.files {
        let source = source.display().to_string();
        buildah(&store, &["copy", container, &source, target])?;
    }
    let entrypoint = serde_json::json!([spec.entrypoint]).to_string();
    buildah(&store, &["config", "--entrypoint", &entrypoint, container])?;
    let policy = format!("--signature-policy={}", policy.display());
    buildah(
        &store,
        &["commit", &policy, "--rm", container, spec.reference],
    )?;
    Ok(())
}

/// Runs buildah on `store`; its stdout.
fn buildah(store: &[String], args: &[&str]) -> Result<String, Error> {
    let output = Command::new("/usr/bin/buildah")
        .args(store)
        .args(args)
        .output()
        .map_err(|e| Error::Setup(format!("buildah: {e}")))?;
    if !output.status.success() {
        return Err(Error::Setup(format!(
            "buildah {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The shared libraries a dynamically linked `binary` loads (the dynamic
/// loader included), as `ldd` resolves them on this machine: what an image
/// FROM scratch must hold for it to start.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| Error::Setup(format!("ldd {}: {e}", binary.display())))?;
    if !output.status.success() {
        return Err(Error::Setup(format!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(libraries_in(&String::from_utf8_lossy(&output.stdout)))
}

/// `ldd`'s lines are `name => /path (address)`, or `/path (address)` for
/// the loader; the vDSO has no file.
fn libraries_in(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            path.filter(|p| p.starts_with('/')).map(PathBuf::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_each_library_and_the_loader_but_not_the_vdso() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f15)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f15)\n";
        assert_eq!(
            libraries_in(ldd),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
