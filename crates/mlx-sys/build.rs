//! Builds mlx-c, the C API that mlx-rs binds, as a static library against a *prebuilt* MLX,
//! generates the Rust bindings, and tells dependents where everything is.
//!
//! Where MLX comes from, first match wins:
//! 1. `MLX_DIR`: an MLX install prefix (`include/mlx/mlx.h`, `lib/libmlx.*`,
//!    `share/cmake/MLX/MLXConfig.cmake`), used as it is.
//! 2. The PyPI wheel of this platform (`mlx-cpu` on Linux, `mlx-metal` on macOS arm64), fetched
//!    with `pip download` and unpacked into `MLX_RUNTIME_DIR` (the workspace's
//!    `.cargo/config.toml` points it at `.mlx/runtime`), or into `OUT_DIR` when that is unset.
//!    `MLX_WHEEL` names an already downloaded wheel file instead (offline builds).
//!
//! Where the mlx-c sources come from: `MLX_C_DIR` if set, else the `src/mlx-c` folder of the
//! published `mlx-sys` 0.7.0 package, which cargo itself downloads (see `mlx-c-source/`).
//!
//! `DEP_MLX_*` for direct dependents (they compile C++ MLX extensions against the very same
//! headers): `INCLUDE` (path list), `DEFINES` (whitespace separated), `LIB_DIR`, `MLX_DIR`,
//! `BUNDLED_LIB_DIR` (libraries a wheel ships beside libmlx, when there are any) and `VERSION`.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The MLX release mlx-c 0.7.0 (the one in mlx-sys 0.7.0) is written against.
const MLX_VERSION: &str = "0.32.2";
const MLX_SYS_VERSION: &str = "0.7.0";

fn main() {
    let target = Target::from_env();
    let mlx = MlxPrefix::locate(&target);
    let mlx_c = mlx_c_sources();
    check_versions(&mlx, &mlx_c);
    build_mlx_c(&mlx, &mlx_c);
    emit_link_lines(&mlx, &target);
    generate_bindings(&mlx_c);
    publish_metadata(&mlx, &mlx_c);
}

fn out_dir() -> PathBuf {
    PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

fn env_path(name: &str) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Build failures are the user's to fix (a missing tool, a wrong path), so they end the
/// build with a sentence saying what to do rather than a backtrace.
fn fail(message: impl AsRef<str>) -> ! {
    eprintln!("\nmlx-sys: {}\n", message.as_ref());
    std::process::exit(1);
}

struct Target {
    os: String,
    arch: String,
}

impl Target {
    fn from_env() -> Self {
        Target {
            os: env::var("CARGO_CFG_TARGET_OS").unwrap_or_default(),
            arch: env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default(),
        }
    }

    /// The PyPI package and wheel platform tag that carry a prebuilt MLX for this target.
    fn wheel(&self) -> Option<Wheel> {
        let (package, platform) = match (self.os.as_str(), self.arch.as_str()) {
            ("linux", "x86_64") => ("mlx-cpu", "manylinux_2_35_x86_64"),
            ("linux", "aarch64") => ("mlx-cpu", "manylinux_2_35_aarch64"),
            // Not built on this project's Linux machines: the same steps, the Metal wheel.
            ("macos", "aarch64") => ("mlx-metal", "macosx_14_0_arm64"),
            _ => return None,
        };
        Some(Wheel { package, platform })
    }
}

struct Wheel {
    package: &'static str,
    platform: &'static str,
}

impl Wheel {
    fn requirement(&self) -> String {
        format!("{}=={MLX_VERSION}", self.package)
    }

    /// The file name stem pip gives this wheel (`mlx_cpu-0.32.2-py3-none-<platform>`).
    fn file_prefix(&self) -> String {
        format!("{}-{MLX_VERSION}-", self.package.replace('-', "_"))
    }
}

/// A prebuilt MLX: `include/`, `lib/` and `share/cmake/MLX/` under `root`.
struct MlxPrefix {
    root: PathBuf,
}

impl MlxPrefix {
    fn locate(target: &Target) -> Self {
        if let Some(root) = env_path("MLX_DIR") {
            let prefix = MlxPrefix { root };
            prefix.validate("MLX_DIR");
            return prefix;
        }
        let Some(wheel) = target.wheel() else {
            fail(format!(
                "there is no prebuilt MLX wheel for {}-{}; build MLX {MLX_VERSION} and set \
                 MLX_DIR to its install prefix",
                target.arch, target.os
            ));
        };
        let runtime = env_path("MLX_RUNTIME_DIR").unwrap_or_else(|| out_dir().join("mlx-runtime"));
        let stamp = runtime.join("WHEEL");
        // Cargo reruns this script if the stamp disappears, i.e. the runtime was deleted.
        println!("cargo:rerun-if-changed={}", stamp.display());
        let wanted = wheel.requirement();
        if fs::read_to_string(&stamp).ok().as_deref().map(str::trim) != Some(wanted.as_str()) {
            install_wheel(&wheel, &runtime);
        }
        let prefix = MlxPrefix {
            root: runtime.join("mlx"),
        };
        prefix.validate("the unpacked wheel");
        prefix
    }

    fn validate(&self, origin: &str) {
        for needed in ["include/mlx/mlx.h", "share/cmake/MLX/MLXConfig.cmake"] {
            if !self.root.join(needed).is_file() {
                fail(format!(
                    "{origin} ({}) is not an MLX install prefix: it has no {needed}",
                    self.root.display()
                ));
            }
        }
        if fs::read_dir(self.lib_dir()).map_or(true, |mut d| {
            !d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libmlx.")))
        }) {
            fail(format!(
                "{origin} has no libmlx in {}",
                self.lib_dir().display()
            ));
        }
    }

    fn lib_dir(&self) -> PathBuf {
        self.root.join("lib")
    }

    fn include_dir(&self) -> PathBuf {
        self.root.join("include")
    }

    /// auditwheel puts libmlx's own dependencies (BLAS, LAPACK, gfortran) in
    /// `<package>.libs/` two levels above `lib/libmlx.so`; libmlx's RPATH points there.
    fn bundled_lib_dir(&self) -> Option<PathBuf> {
        let site = self.root.parent()?;
        fs::read_dir(site)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.is_dir() && p.extension().is_some_and(|e| e == "libs"))
    }

    /// A Metal build ships its shader library beside libmlx and needs metal-cpp's headers.
    fn is_metal(&self) -> bool {
        self.lib_dir().join("mlx.metallib").is_file()
    }

    /// The version in `mlx/version.h`: what we really compile and link against.
    fn version(&self) -> Option<String> {
        let header = fs::read_to_string(self.include_dir().join("mlx/version.h")).ok()?;
        let part = |name: &str| {
            header.lines().find_map(|line| {
                let rest = line.trim().strip_prefix("#define ")?.strip_prefix(name)?;
                rest.trim().parse::<u32>().ok()
            })
        };
        Some(format!(
            "{}.{}.{}",
            part("MLX_VERSION_MAJOR")?,
            part("MLX_VERSION_MINOR")?,
            part("MLX_VERSION_PATCH")?
        ))
    }
}

fn python() -> OsString {
    println!("cargo:rerun-if-env-changed=PYTHON");
    env::var_os("PYTHON").unwrap_or_else(|| "python3".into())
}

fn run(command: &mut Command, what: &str) {
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => fail(format!("{what} failed ({status}): {command:?}")),
        Err(err) => fail(format!("{what}: could not start {command:?}: {err}")),
    }
}

/// Unpacks the wheel into `runtime` (replacing whatever was there) through a sibling temporary
/// folder, so that an interrupted build never leaves a half-unpacked runtime behind.
fn install_wheel(wheel: &Wheel, runtime: &Path) {
    let parent = runtime.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).unwrap_or_else(|e| fail(format!("{}: {e}", parent.display())));
    let staging = parent.join(format!(".mlx-runtime-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).unwrap_or_else(|e| fail(format!("{}: {e}", staging.display())));

    let wheel_file = match env_path("MLX_WHEEL") {
        Some(file) => file,
        None => download_wheel(wheel, &staging.join("download")),
    };
    let unpacked = staging.join("unpacked");
    run(
        Command::new(python())
            .args([
                "-c",
                "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])",
            ])
            .arg(&wheel_file)
            .arg(&unpacked),
        "unpacking the MLX wheel",
    );
    fs::write(unpacked.join("WHEEL"), format!("{}\n", wheel.requirement()))
        .unwrap_or_else(|e| fail(format!("{}: {e}", unpacked.display())));
    let _ = fs::remove_dir_all(runtime);
    fs::rename(&unpacked, runtime).unwrap_or_else(|e| {
        fail(format!(
            "moving {} to {}: {e}",
            unpacked.display(),
            runtime.display()
        ))
    });
    let _ = fs::remove_dir_all(&staging);
}

fn download_wheel(wheel: &Wheel, into: &Path) -> PathBuf {
    println!(
        "cargo:warning=fetching {} from PyPI with pip",
        wheel.requirement()
    );
    run(
        Command::new(python())
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--quiet",
            ])
            .args(["--platform", wheel.platform, "--dest"])
            .arg(into)
            .arg(wheel.requirement()),
        "pip download (install Python 3 with pip, or set MLX_WHEEL to a downloaded wheel, \
         or MLX_DIR to an MLX install)",
    );
    fs::read_dir(into)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&wheel.file_prefix()))
        })
        .unwrap_or_else(|| {
            fail(format!(
                "pip download left no {} wheel",
                wheel.requirement()
            ))
        })
}

/// The mlx-c source tree: `MLX_C_DIR`, or `src/mlx-c` of the published mlx-sys package, which
/// we make cargo fetch by resolving a one-dependency manifest (a copy of `mlx-c-source/`).
/// That honours CARGO_HOME, source replacement and `--offline` like any other dependency.
fn mlx_c_sources() -> PathBuf {
    if let Some(dir) = env_path("MLX_C_DIR") {
        return dir;
    }
    let template = manifest_dir().join("mlx-c-source/Cargo.toml.in");
    println!("cargo:rerun-if-changed={}", template.display());
    let helper = out_dir().join("mlx-c-source");
    fs::create_dir_all(helper.join("src")).unwrap_or_else(|e| fail(format!("{e}")));
    fs::copy(&template, helper.join("Cargo.toml")).unwrap_or_else(|e| fail(format!("{e}")));
    fs::write(helper.join("src/lib.rs"), "").unwrap_or_else(|e| fail(format!("{e}")));

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(helper.join("Cargo.toml"))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap_or_else(|e| fail(format!("running cargo metadata: {e}")));
    if !output.status.success() {
        fail(format!(
            "cargo could not fetch mlx-sys {MLX_SYS_VERSION} for its mlx-c sources (set MLX_C_DIR \
             to an mlx-c checkout to build without it):\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| fail(format!("cargo metadata printed no JSON: {e}")));
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "mlx-sys" && p["version"] == MLX_SYS_VERSION)
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap_or_else(|| fail(format!("cargo metadata lists no mlx-sys {MLX_SYS_VERSION}")));
    let dir = Path::new(manifest)
        .parent()
        .expect("a manifest path has a parent")
        .join("src/mlx-c");
    if !dir.join("CMakeLists.txt").is_file() {
        fail(format!("{} has no mlx-c CMakeLists.txt", dir.display()));
    }
    dir
}

fn check_versions(mlx: &MlxPrefix, mlx_c: &Path) {
    let pinned = fs::read_to_string(mlx_c.join("CMakeLists.txt"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let tag = l.trim().strip_prefix("GIT_TAG v")?;
                Some(tag.trim_end_matches(')').trim().to_owned())
            })
        });
    if let (Some(pinned), Some(found)) = (pinned, mlx.version()) {
        if pinned != found {
            println!(
                "cargo:warning=mlx-c is written against MLX {pinned}, the MLX at {} is {found}",
                mlx.root.display()
            );
        }
    }
}

fn build_mlx_c(mlx: &MlxPrefix, mlx_c: &Path) {
    let compat = manifest_dir().join("src/compat.hpp");
    println!("cargo:rerun-if-changed={}", compat.display());
    cmake::Config::new(mlx_c)
        .profile("Release")
        .define("MLX_C_USE_SYSTEM_MLX", "ON")
        .define("MLX_DIR", mlx.root.join("share/cmake/MLX"))
        .define("MLX_C_BUILD_EXAMPLES", "OFF")
        .define("BUILD_SHARED_LIBS", "OFF")
        .define("CMAKE_POSITION_INDEPENDENT_CODE", "ON")
        // CMake's compiler check also compiles with these flags but without the target's include
        // directories, so the forced include must find MLX's headers on its own.
        .cxxflag(format!("-isystem {}", mlx.include_dir().display()))
        .cxxflag(format!("-include {}", compat.display()))
        .build();
}

fn emit_link_lines(mlx: &MlxPrefix, target: &Target) {
    let built = out_dir();
    for dir in ["lib", "lib64"] {
        println!(
            "cargo:rustc-link-search=native={}",
            built.join(dir).display()
        );
    }
    println!("cargo:rustc-link-lib=static=mlxc");
    println!("cargo:rustc-link-search=native={}", mlx.lib_dir().display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    // libmlx is C++ built with the platform's standard library; mlx-c's objects need it too.
    let cxx = if target.os == "macos" {
        "c++"
    } else {
        "stdc++"
    };
    println!("cargo:rustc-link-lib=dylib={cxx}");
}

fn generate_bindings(mlx_c: &Path) {
    let prelude = manifest_dir().join("src/bindgen_prelude.h");
    println!("cargo:rerun-if-changed={}", prelude.display());
    let mut headers: Vec<PathBuf> = fs::read_dir(mlx_c.join("mlx/c"))
        .unwrap_or_else(|e| fail(format!("{}: {e}", mlx_c.display())))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "h"))
        .collect();
    headers.sort();
    let mut umbrella = format!("#include \"{}\"\n", prelude.display());
    for header in &headers {
        umbrella.push_str(&format!("#include \"{}\"\n", header.display()));
    }
    let bindings = bindgen::Builder::default()
        .header_contents("mlx_c_all.h", &umbrella)
        .clang_arg(format!("-I{}", mlx_c.display()))
        .allowlist_item("_?mlx_.*")
        .generate()
        .unwrap_or_else(|e| fail(format!("bindgen over {}: {e}", mlx_c.display())));
    bindings
        .write_to_file(out_dir().join("bindings.rs"))
        .unwrap_or_else(|e| fail(format!("writing bindings: {e}")));
}

fn publish_metadata(mlx: &MlxPrefix, mlx_c: &Path) {
    let mut include = vec![mlx.include_dir()];
    let mut defines: Vec<&str> = Vec::new();
    if mlx.is_metal() {
        // What MLXConfig.cmake adds for a Metal build (MLX_CXX_FLAGS and metal_cpp).
        include.push(mlx.include_dir().join("metal_cpp"));
        defines.extend(["_METAL_", "ACCELERATE_NEW_LAPACK"]);
    }
    include.push(mlx_c.to_path_buf());
    let include = env::join_paths(&include)
        .unwrap_or_else(|e| fail(format!("an include directory holds a path separator: {e}")));
    println!("cargo::metadata=include={}", include.to_string_lossy());
    // libmlx is a shared library here: no MLX_STATIC (that is the published crate's static build).
    println!("cargo::metadata=defines={}", defines.join(" "));
    println!("cargo::metadata=lib_dir={}", mlx.lib_dir().display());
    println!("cargo::metadata=mlx_dir={}", mlx.root.display());
    if let Some(dir) = mlx.bundled_lib_dir() {
        println!("cargo::metadata=bundled_lib_dir={}", dir.display());
    }
    if let Some(version) = mlx.version() {
        println!("cargo::metadata=version={version}");
    }
}
