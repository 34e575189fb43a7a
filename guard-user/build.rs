fn main() -> anyhow::Result<()> {
    // The Debian toolchain `cargo xtask` links as "debian-web" carries the
    // precompiled core for bpfel-unknown-none; see README "Toolchain".
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "guard-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../guard-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("debian-web"),
    )
}
