//! Compiles the XDP programs in `bpf/` with clang into `$OUT_DIR/NAME.bpf.o`, which the
//! crate (and its benchmark's load generator) embeds. `-g` is required: aya reads the BTF map definitions from it.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CLANG");
    // The agent's program, and the benchmark's load generator (examples/flood.rs).
    for name in ["synwatch", "flood"] {
        compile(name);
    }
}

fn compile(name: &str) {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let source = manifest.join(format!("../../bpf/{name}.bpf.c"));
    let out =
        PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join(format!("{name}.bpf.o"));
    println!("cargo:rerun-if-changed={}", source.display());
    // Debian keeps <asm/types.h> under the multiarch directory of the target.
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        Ok("arm") => "arm-linux-gnueabihf",
        Ok("riscv64") => "riscv64-linux-gnu",
        Ok("powerpc64") => "powerpc64le-linux-gnu",
        Ok("s390x") => "s390x-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "{clang} could not compile {} ({s}); see its messages above",
            source.display()
        )),
        Err(e) => fail(&format!(
            "cannot run {clang} ({e}): the XDP program is compiled with clang; install clang and libbpf-dev (`make deps` does: apt-get install clang libbpf-dev)"
        )),
    }
}

fn fail(why: &str) -> ! {
    eprintln!("error: {why}");
    std::process::exit(1);
}
