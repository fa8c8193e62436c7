//! Where a model's time goes in tract: each node of the optimised plan
//! timed over many runs, summed by operator, slowest first.
//!
//!     cargo run --release -p basalt-infer --example profile -- MODEL.onnx 1,3,48,192 [RUNS] [--op NAME] [--tract-only]
//!
//! The input is zeros of that shape, of the type the model declares. The plan
//! is the one basalt serves (`basalt_infer::optimise`: tract's passes and
//! basalt's rewrites); `--tract-only` profiles tract's passes alone, to see
//! what the rewrites buy. `--op NAME` lists only the nodes whose operator
//! name contains NAME.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{eval, SimpleState};
use tract_onnx::tract_hir::infer::Factoid;

fn usage() -> ! {
    eprintln!("usage: profile MODEL.onnx DIM,DIM,... [RUNS] [--op NAME] [--tract-only]");
    std::process::exit(2);
}

fn main() -> TractResult<()> {
    let mut positional = Vec::new();
    let (mut only, mut tract_only) = (None, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--op" => only = Some(args.next().unwrap_or_else(|| usage())),
            "--tract-only" => tract_only = true,
            _ => positional.push(a),
        }
    }
    let [path, shape, rest @ ..] = positional.as_slice() else {
        usage()
    };
    let runs: usize = match rest {
        [] => 200,
        [r] => r.parse().unwrap_or_else(|_| usage()),
        _ => usage(),
    };
    let shape: Vec<usize> = shape
        .split(',')
        .map(|d| d.parse().unwrap_or_else(|_| usage()))
        .collect();

    let mut model = tract_onnx::onnx().model_for_path(path)?;
    let dt = model
        .input_fact(0)?
        .datum_type
        .concretize()
        .unwrap_or(f32::datum_type());
    model.set_input_fact(0, InferenceFact::dt_shape(dt, &shape))?;
    let optimised = if tract_only {
        model.into_optimized()?
    } else {
        basalt_infer::optimise(model)?
    };
    let plan = optimised.into_runnable()?;
    let input = Tensor::zero_dt(dt, &shape)?;
    let mut state = SimpleState::new(&plan)?;
    state.run(tvec!(input.clone().into_tvalue()))?;

    let mut by_node: HashMap<usize, Duration> = HashMap::new();
    let start = Instant::now();
    for _ in 0..runs {
        state.run_plan_with_eval(
            tvec!(input.clone().into_tvalue()),
            |ctx, op_state, node, inputs| {
                let t = Instant::now();
                let r = eval(ctx, op_state, node, inputs);
                *by_node.entry(node.id).or_default() += t.elapsed();
                r
            },
        )?;
    }
    let total = start.elapsed();

    let model = plan.model();
    let per_run = |d: Duration| d.as_secs_f64() * 1e3 / runs as f64;
    let mut nodes: Vec<(usize, Duration)> = by_node.into_iter().collect();
    nodes.sort_by_key(|&(_, d)| std::cmp::Reverse(d));
    let mut by_op: HashMap<String, (Duration, usize)> = HashMap::new();
    for (id, d) in &nodes {
        let e = by_op
            .entry(model.node(*id).op().name().to_string())
            .or_default();
        e.0 += *d;
        e.1 += 1;
    }
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by_key(|(_, (d, _))| std::cmp::Reverse(*d));

    println!(
        "{runs} runs, {:.3} ms per run, {} nodes",
        per_run(total),
        model.nodes().len()
    );
    println!("\nby operator:");
    for (name, (d, n)) in ops {
        println!("{:>9.3} ms  {n:>4} nodes  {name}", per_run(d));
    }
    println!("\nslowest nodes:");
    let shown = nodes.iter().filter(|(id, _)| {
        only.as_ref()
            .is_none_or(|o| model.node(*id).op().name().contains(o.as_str()))
    });
    for (id, d) in shown.take(25) {
        let n = model.node(*id);
        let out = n
            .outputs
            .first()
            .map(|o| format!("{:?}", o.fact))
            .unwrap_or_default();
        println!(
            "{:>9.3} ms  #{id} {} {}  -> {out}",
            per_run(*d),
            n.op().name(),
            n.name
        );
        for line in n.op().info()? {
            println!("             {line}");
        }
        for i in &n.inputs {
            println!("             in {:?}", model.outlet_fact(*i)?);
        }
    }
    Ok(())
}
