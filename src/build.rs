//! The build pipeline: base -> provisioned(provision, clean) -> configured(configure,
//! finalize) -> export.
//!
//! [`build`] checks the host, makes the private work dir and always removes it;
//! [`run_stages`] is the stage list of the design. Each cached layer is a function of
//! [`crate::layers`] that takes the stages it would skip on a hit as a closure, so every
//! stage is named here, like mkosi's `build_image()`.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::base::{self, cache::Cache, BaseImage};
use crate::context::{self, BuildRequest, Setup, Timings};
use crate::export::{self, Output};
use crate::image::guard;
use crate::layers;
use crate::progress::Progress;
use crate::recover;
use crate::stage::{configure, finalize, provision};

/// Builds an image from a profile, end to end. Outputs appear in `out_dir` only when the
/// whole build succeeded.
pub fn build(req: BuildRequest) -> Result<Vec<Output>> {
    context::preflight(&req)?;
    let out_dir = req.out_dir.clone();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // Work that killed builds left here and in the cache goes first (crate::recover).
    for s in recover::stale_in_output_dir(&out_dir)? {
        let done = recover::clean(&s)?;
        eprintln!("mesobake: removed {}", done.describe());
    }
    let cache = Cache::open(None)?;
    let _cache_use = recover::use_cache(&cache)?;
    let work = tempfile::Builder::new()
        .prefix(recover::WORK_PREFIX)
        .tempdir_in(&out_dir)
        .with_context(|| format!("creating a work dir in {}", out_dir.display()))?
        .keep();
    let claim = recover::claim(&work);
    let started = Instant::now();
    let show_timings = req.timings;
    let setup = Setup {
        req,
        work: work.clone(),
        cache,
        progress: Progress::new(),
        timings: Timings::new(),
    };
    let result = claim.and_then(|_claim| run_stages(setup));
    // The work dir goes on every path; remove_work_dir refuses if anything is still
    // mounted under it, so a failed teardown never deletes inside a mounted image.
    let cleanup = guard::remove_work_dir(&work);
    let (outputs, timings) = result?;
    cleanup?;
    if show_timings {
        for (name, d) in &timings {
            eprintln!("timing {name:<10} {:>7.1} s", d.as_secs_f64());
        }
        let total = started.elapsed().as_secs_f64();
        eprintln!("timing {:<10} {total:>7.1} s", "total");
    }
    Ok(outputs)
}

/// The stages, in order. A cached layer skips the stages inside its closure. The
/// provisioned layer is cleaned like a finished image, so that the clusters apt and its
/// lists dirtied are not part of every role's delta.
fn run_stages(mut setup: Setup) -> Result<(Vec<Output>, Timings)> {
    let (spec, name) = (&setup.req.profile.base, &setup.req.profile.name);
    let getting = format!("getting base {spec}");
    let installing = format!("installing packages into {name}");
    let configuring = format!("configuring {name}");
    let cleaning = format!("cleaning {name} for distribution");
    let base = setup.stage("base", &getting, obtain_base)?;
    let mut ctx = setup.with_base(base);
    let prov = layers::provisioned(&mut ctx, |c, img| {
        let report = c.stage("provision", &installing, |c| provision::run(c, img))?;
        c.stage("clean", "cleaning the provisioned disk", |c| {
            finalize::run(c, img)
        })?;
        Ok(report)
    })?;
    let conf = layers::configured(&mut ctx, &prov, |c, img| {
        let layout = c.stage("configure", &configuring, |c| configure::run(c, img))?;
        c.stage("finalize", &cleaning, |c| finalize::run(c, img))?;
        Ok(layout)
    })?;
    let outputs = ctx.stage("export", "writing outputs", |c| {
        export::run(c, &prov, &conf)
    })?;
    Ok((outputs, ctx.timings))
}

/// Gets the base named in the profile (downloads draw their own progress bar).
fn obtain_base(s: &mut Setup) -> Result<BaseImage> {
    let spec = &s.req.profile.base;
    s.progress
        .suspend(|| base::obtain(spec, &s.req.base_opts, &s.cache))
}
