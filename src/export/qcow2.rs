//! qcow2 outputs from the packed provisioned layer plus the configure delta.
//!
//! Compressing the whole disk is the slowest step of a rebuild, and all but a few MiB
//! of it is the provisioned layer, which every role and every overlay edit share. The
//! compressed qcow2 of that layer is made once (with the build's qcow2 options, so it
//! is what a full conversion would write) and cached as the `packed` layer; an output
//! is a copy of it with the changed clusters written in by QEMU's own qcow2 driver.
//! The layers themselves come from [`crate::layers`]; this module only reads them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use crate::context::BuildContext;
use crate::layers::{delta, store as layer, Configured, Provisioned};
use crate::run::Cmd;

/// Above this much changed data a full conversion is used instead: the delta is stored
/// uncompressed, so a large one would make the output noticeably bigger.
const MAX_DELTA_DATA: u64 = 64 << 20;

/// Writes the qcow2 output `dest` from the packed provisioned layer and the configured
/// delta. Returns false when the caller should convert the whole disk instead.
pub fn from_layers(
    ctx: &mut BuildContext,
    prov: &Provisioned,
    conf: &Configured,
    dest: &Path,
    options: &[&str],
) -> Result<bool> {
    if conf.delta.data_bytes() > MAX_DELTA_DATA {
        if crate::run::verbose() {
            eprintln!(
                "mesobake: {} MiB changed since the provisioned layer; converting the whole disk",
                conf.delta.data_bytes() >> 20
            );
        }
        return Ok(false);
    }
    // -W (out-of-order writes) lets qemu-img compress on every core, about twice as fast
    // on two, but places clusters differently each run. That is harmless here: outputs
    // copy one packed instance, so equal inputs still give equal bytes.
    let options: Vec<&str> = std::iter::once("-W")
        .chain(options.iter().copied())
        .collect();
    let mut inputs = BTreeMap::new();
    inputs.insert("provisioned".to_string(), prov.instance.clone());
    inputs.insert("qemu-img options".to_string(), options.join(" "));
    inputs.insert("qemu-img".to_string(), qemu_img_version()?);
    let key = layer::key(&inputs);
    let lock = ctx.cache.lock_entry(&format!("{}-{key}", layer::PACKED))?;
    let packed = match layer::lookup(&ctx.cache, layer::PACKED, &key)? {
        Some((f, _)) => f,
        None => {
            let bar = ctx
                .progress
                .percent("compressing the provisioned layer (once per package set)");
            let (f, _) = layer::save(
                &ctx.cache,
                layer::PACKED,
                &key,
                inputs,
                "disk.qcow2",
                Default::default(),
                |path| super::convert(&prov.disk, path, "qcow2", &options, &bar),
            )?;
            bar.done();
            f
        }
    };
    drop(lock);
    ctx.progress.step("writing the changed clusters");
    std::fs::copy(&packed, dest)
        .with_context(|| format!("copying the packed layer to {}", dest.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the mode of {}", dest.display()))?;
    }
    let scratch = ctx.work.join("delta-parts");
    delta::apply_qcow2(&conf.delta, &conf.data, dest, &scratch)?;
    std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    Ok(true)
}

fn qemu_img_version() -> Result<String> {
    let out = Cmd::new("qemu-img").arg("--version").output()?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}
