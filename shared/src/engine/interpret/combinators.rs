//! The combinators that run blocks side by side or again: `parallel` (with its join), `foreach`
//! and `loop`. Children are polled in declaration order, as the module above requires.

use std::task::Poll;

use futures::future::poll_fn;

use crate::flow::{ForeachStep, Join, LoopCondition, LoopStep, ParallelStep};

use super::*;

pub(super) async fn run_parallel(
    ctx: &Ctx,
    parallel: &ParallelStep,
    path: String,
    locals: Locals,
) -> Run {
    let mut running: Vec<Option<Boxed<'_, Run>>> = parallel
        .branches
        .iter()
        .map(|b| {
            Some(run_block(
                ctx,
                &b.steps,
                format!("{path}.{}", b.name),
                locals.clone(),
            ))
        })
        .collect();
    let total = running.len();
    let mut finished = Map::new();
    let mut succeeded = Map::new();
    let mut failures: Vec<ErrorInfo> = Vec::new();
    poll_fn(|cx| {
        for index in 0..total {
            let Some(branch) = running[index].as_mut() else { continue };
            let Poll::Ready(result) = branch.as_mut().poll(cx) else { continue };
            running[index] = None;
            let name = parallel.branches[index].name.clone();
            let decided = match result {
                Ok(Flow::Return(value)) => Some(Ok(Flow::Return(value))),
                Ok(flow) => {
                    let output = match flow {
                        Flow::Ran(v) => v,
                        _ => Value::Null,
                    };
                    finished.insert(name.clone(), serde_json::json!({ "status": "succeeded", "output": output }));
                    succeeded.insert(name, output);
                    None
                }
                Err(error) => {
                    let entry = serde_json::json!({ "status": "failed", "output": Value::Null, "error": error.to_value() });
                    finished.insert(name, entry);
                    failures.push(error);
                    None
                }
            };
            let remaining = running.iter().filter(|b| b.is_some()).count();
            let decided = decided.or_else(|| decide_join(ctx, &parallel.join, &locals, &finished, &succeeded, &failures, remaining));
            if let Some(result) = decided {
                // The join is decided: the branches still running are cancelled (dropped).
                running.iter_mut().for_each(|b| *b = None);
                return Poll::Ready(result);
            }
        }
        Poll::Pending
    })
    .await
}

/// Whether a `parallel` is decided after a branch finished.
fn decide_join(
    ctx: &Ctx,
    join: &Join,
    locals: &Locals,
    finished: &Map,
    succeeded: &Map,
    failures: &[ErrorInfo],
    remaining: usize,
) -> Option<Run> {
    let success = || Ok(Flow::Ran(Value::Object(succeeded.clone())));
    let all_failed = || {
        let first = failures
            .first()
            .map_or(String::new(), |e| format!(": {}", e.message));
        let mut error = ErrorInfo::new(
            "parallel",
            format!(
                "{} of {} branches failed{first}",
                failures.len(),
                finished.len()
            ),
        );
        error.retryable = failures.iter().any(|e| e.retryable);
        Err(error)
    };
    match join {
        Join::All => match failures.last() {
            Some(error) => Some(Err(error.clone())),
            None if remaining == 0 => Some(success()),
            None => None,
        },
        Join::Any => {
            if !succeeded.is_empty() {
                Some(success())
            } else if remaining == 0 {
                Some(all_failed())
            } else {
                None
            }
        }
        Join::First => Some(match failures.last() {
            Some(error) if succeeded.is_empty() => Err(error.clone()),
            _ => success(),
        }),
        Join::Count(needed) => {
            let needed = *needed as usize;
            if succeeded.len() >= needed {
                Some(success())
            } else if succeeded.len() + remaining < needed {
                Some(all_failed())
            } else {
                None
            }
        }
        Join::When(condition) => {
            let locals = locals.with("branches", Value::Object(finished.clone()));
            match ctx.eval_bool(condition, &locals) {
                Ok(true) => Some(success()),
                Err(error) => Some(Err(error)),
                Ok(false) if remaining == 0 => Some(Err(ErrorInfo::new(
                    "parallel",
                    "every branch finished and the join condition never held",
                ))),
                Ok(false) => None,
            }
        }
    }
}

pub(super) async fn run_foreach(
    ctx: &Ctx,
    foreach: &ForeachStep,
    path: String,
    locals: Locals,
) -> Run {
    let items = match ctx.eval(&foreach.items, &locals)? {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => {
            return Err(ErrorInfo::new(
                "expression",
                format!("foreach needs a list, got {other}"),
            ));
        }
    };
    let limit = foreach.concurrency.max(1) as usize;
    let mut outputs: Vec<Value> = vec![Value::Null; items.len()];
    let mut running: Vec<(usize, Boxed<'_, Run>)> = Vec::new();
    let mut next = 0;
    poll_fn(|cx| {
        loop {
            while running.len() < limit && next < items.len() {
                let scope = locals
                    .with("index", Value::from(next))
                    .with(foreach.item_name.clone(), items[next].clone());
                running.push((
                    next,
                    run_block(ctx, &foreach.steps, format!("{path}[{next}]"), scope),
                ));
                next += 1;
            }
            let mut progressed = false;
            let mut index = 0;
            while index < running.len() {
                let Poll::Ready(result) = running[index].1.as_mut().poll(cx) else {
                    index += 1;
                    continue;
                };
                let (position, _) = running.remove(index);
                progressed = true;
                match result {
                    Ok(Flow::Ran(output)) => outputs[position] = output,
                    Ok(Flow::Skipped) => {}
                    Ok(Flow::Return(value)) => {
                        running.clear();
                        return Poll::Ready(Ok(Flow::Return(value)));
                    }
                    Err(error) => {
                        running.clear();
                        return Poll::Ready(Err(error));
                    }
                }
            }
            if running.is_empty() && next >= items.len() {
                return Poll::Ready(Ok(Flow::Ran(Value::Array(std::mem::take(&mut outputs)))));
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await
}

pub(super) async fn run_loop(ctx: &Ctx, looping: &LoopStep, path: String, locals: Locals) -> Run {
    let mut last = Value::Null;
    let mut iteration: u32 = 0;
    loop {
        let scope = locals.with("index", Value::from(iteration));
        if let LoopCondition::While(condition) = &looping.condition
            && !ctx.eval_bool(condition, &scope)?
        {
            return Ok(Flow::Ran(last));
        }
        if iteration >= looping.max {
            let message = format!(
                "loop reached max {} iterations before its condition ended it",
                looping.max
            );
            return Err(ErrorInfo::new("loop_max", message));
        }
        match run_block(
            ctx,
            &looping.steps,
            format!("{path}#{iteration}"),
            scope.clone(),
        )
        .await?
        {
            Flow::Ran(output) => last = output,
            Flow::Skipped => {}
            Flow::Return(value) => return Ok(Flow::Return(value)),
        }
        iteration += 1;
        if let LoopCondition::Until(condition) = &looping.condition
            && ctx.eval_bool(condition, &scope)?
        {
            return Ok(Flow::Ran(last));
        }
    }
}
