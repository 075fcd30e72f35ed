//! The streamOptimized VMDK that the OVA and the EC2 kit share, from the layers.
//!
//! Like the qcow2 ([`super::qcow2`]): the provisioned layer's grains are compressed once
//! and cached as the `packed-vmdk` layer (a grain store, [`super::vmdk_stream`]); an
//! output copies the stored grains and compresses only those the configure delta
//! changed. The result is the same bytes a from-scratch write of the finished disk gives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::vmdk_stream;
use crate::context::BuildContext;
use crate::layers::{store as layer, Configured, Provisioned};

/// The cached grain store of the provisioned layer.
pub const PACKED_VMDK: &str = "packed-vmdk";
/// Bump when the grain store's format or the writer's compression changes.
const STORE_RECIPE: &str = "grain-store-1";

/// Writes the streamOptimized VMDK of the finished disk (the provisioned layer plus the
/// configure delta) to `dest`, with the descriptor CID `cid`.
pub fn from_layers(
    ctx: &mut BuildContext,
    prov: &Provisioned,
    conf: &Configured,
    cid: u32,
    dest: &Path,
) -> Result<()> {
    let store = grain_store(ctx, prov)?;
    ctx.progress
        .step("writing the streamOptimized VMDK (changed grains only)");
    vmdk_stream::write(&store, Some((&conf.delta, &conf.data)), cid, dest)
}

/// The provisioned layer's grain store, made once per provisioned instance.
fn grain_store(ctx: &mut BuildContext, prov: &Provisioned) -> Result<PathBuf> {
    let mut inputs = BTreeMap::new();
    inputs.insert("provisioned".to_string(), prov.instance.clone());
    inputs.insert("recipe".to_string(), STORE_RECIPE.to_string());
    let key = layer::key(&inputs);
    let _lock = ctx.cache.lock_entry(&format!("{PACKED_VMDK}-{key}"))?;
    if let Some((f, _)) = layer::lookup(&ctx.cache, PACKED_VMDK, &key)? {
        return Ok(f);
    }
    ctx.progress
        .step("compressing the provisioned layer's grains (once per package set)");
    let (f, _) = layer::save(
        &ctx.cache,
        PACKED_VMDK,
        &key,
        inputs,
        "grains",
        Default::default(),
        |path| vmdk_stream::pack(&prov.disk, path),
    )?;
    Ok(f)
}

/// Writes the streamOptimized VMDK of any disk qemu-img reads (a qcow2 from `mesobake
/// build`, for `seed --ova`) to `dest`: the disk as a sparse raw file in `scratch`, its
/// grains compressed on every core, then written out. `scratch` is emptied again.
pub fn from_image(disk: &Path, cid: u32, scratch: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let raw = scratch.join("disk.raw");
    let grains = scratch.join("disk.grains");
    let r = (|| {
        crate::run::Cmd::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(disk)
            .arg(&raw)
            .run()
            .with_context(|| format!("reading {}", disk.display()))?;
        vmdk_stream::pack(&raw, &grains)?;
        vmdk_stream::write(&grains, None, cid, dest)
    })();
    for f in [&raw, &grains] {
        let _ = std::fs::remove_file(f);
    }
    r
}
