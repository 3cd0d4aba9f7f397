use std::cell::RefCell;

use super::*;

/// A stand-in engine: which models are on the accelerator, what was moved and warned.
#[derive(Default)]
struct Stand {
    accelerated: RefCell<Vec<String>>,
    moved: RefCell<Vec<String>>,
    warnings: RefCell<Vec<String>>,
}

impl Recovery for Stand {
    fn on_accelerator(&self, model: &str) -> bool {
        self.accelerated.borrow().iter().any(|m| m == model)
    }
    fn move_to_cpu(&self, model: &str) -> Result<(), EngineError> {
        self.accelerated.borrow_mut().retain(|m| m != model);
        self.moved.borrow_mut().push(model.to_owned());
        Ok(())
    }
    fn warn(&self, text: String) {
        self.warnings.borrow_mut().push(text);
    }
}

fn oom(model: &str) -> EngineError {
    EngineError::ort(
        model,
        "Failed to allocate memory for requested buffer of size 123",
    )
}

fn stand(models: &[&str]) -> Stand {
    let s = Stand::default();
    *s.accelerated.borrow_mut() = models.iter().map(|m| m.to_string()).collect();
    s
}

const BATCH: Shrinkable<'static> = Shrinkable {
    levels: 2,
    describe: &|level| format!("{} tiles per call", 4 >> level),
};

#[test]
fn out_of_memory_messages_are_recognised() {
    for text in [
        "Non-zero status code returned while running Conv node. onnxruntime::BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer of size 939524096",
        "CUDA failure 2: out of memory ; GPU=0",
        "CUDNN failure 4: CUDNN_STATUS_ALLOC_FAILED",
        "DML: E_OUTOFMEMORY",
    ] {
        assert!(is_out_of_memory(text), "{text}");
        assert!(matches!(
            EngineError::ort("UNet", text),
            EngineError::OutOfMemory { .. }
        ));
    }
    assert!(!is_out_of_memory(
        "Got invalid dimensions for input: sample"
    ));
    assert!(matches!(
        EngineError::ort("UNet", "bad shape"),
        EngineError::Ort { .. }
    ));
}

#[test]
fn an_accelerator_out_of_memory_shrinks_level_by_level_then_moves_to_the_cpu() {
    let engine = stand(&["UNet"]);
    let mut shrink = Shrink::default();
    let mut levels = Vec::new();
    let value: Result<u32, EngineError> =
        retry_out_of_memory(&engine, &mut shrink, &BATCH, |level| {
            levels.push((level, engine.on_accelerator("UNet")));
            if engine.on_accelerator("UNet") {
                Err(oom("UNet"))
            } else {
                Ok(level)
            }
        });
    assert_eq!(value.unwrap(), 0, "the CPU runs at the configured size");
    assert_eq!(levels, [(0, true), (1, true), (2, true), (0, false)]);
    assert_eq!(*engine.moved.borrow(), ["UNet"]);
    let warnings = engine.warnings.borrow();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0].contains("2 tiles per call") && warnings[1].contains("1 tiles per call"));
    assert!(warnings[2].contains("runs on the CPU") && warnings[2].contains("even with 1 tiles"));
}

#[test]
fn the_level_that_worked_is_kept_for_the_next_calls() {
    let engine = stand(&["UNet"]);
    let mut shrink = Shrink::default();
    let run = |shrink: &mut Shrink| {
        retry_out_of_memory(&engine, shrink, &BATCH, |level| {
            if level == 0 {
                Err(oom("UNet"))
            } else {
                Ok(level)
            }
        })
    };
    assert_eq!(run(&mut shrink).unwrap(), 1);
    assert_eq!(
        run(&mut shrink).unwrap(),
        1,
        "starts at level 1: no second failure"
    );
    assert_eq!(engine.warnings.borrow().len(), 1);
}

#[test]
fn other_errors_and_cpu_out_of_memory_are_not_retried() {
    let engine = stand(&["UNet"]);
    let mut calls = 0;
    let error = retry_out_of_memory(
        &engine,
        &mut Shrink::default(),
        &BATCH,
        |_| -> Result<(), EngineError> {
            calls += 1;
            Err(EngineError::ort("UNet", "invalid input shape"))
        },
    )
    .unwrap_err();
    assert!(matches!(error, EngineError::Ort { .. }));
    assert_eq!(calls, 1);
    let mut calls = 0;
    let error = retry_out_of_memory(
        &engine,
        &mut Shrink::default(),
        &BATCH,
        |_| -> Result<(), EngineError> {
            calls += 1;
            Err(oom("VAE decoder"))
        },
    )
    .unwrap_err();
    assert!(
        matches!(error, EngineError::OutOfMemory { .. }),
        "the VAE is on the CPU"
    );
    assert_eq!(calls, 1);
    assert!(engine.warnings.borrow().is_empty());
}

#[test]
fn a_network_without_sizes_goes_to_the_cpu_at_once() {
    let engine = stand(&["CLIP"]);
    let mut calls = 0;
    let out = retry_out_of_memory(&engine, &mut Shrink::default(), &Shrinkable::FIXED, |_| {
        calls += 1;
        if engine.on_accelerator("CLIP") {
            Err(oom("CLIP"))
        } else {
            Ok(())
        }
    });
    assert!(out.is_ok());
    assert_eq!(calls, 2);
    let warnings = engine.warnings.borrow();
    assert_eq!(warnings.len(), 1);
    assert!(!warnings[0].contains("even with"), "{}", warnings[0]);
}

#[test]
fn jobs_hear_standing_warnings_and_those_raised_while_they_ran() {
    let notices = Notices::default();
    notices.stand("CUDA is not used: no device".into());
    notices.raise("before the job".into());
    let mark = notices.mark();
    notices.raise("UNet ran out".into());
    notices.raise("UNet ran out".into());
    notices.raise("VAE moved".into());
    assert_eq!(
        notices.for_job(mark),
        ["CUDA is not used: no device", "UNet ran out", "VAE moved"]
    );
    assert_eq!(
        notices.for_status(),
        [
            "CUDA is not used: no device",
            "before the job",
            "UNet ran out",
            "VAE moved"
        ]
    );
    for i in 0..40 {
        notices.raise(format!("warning {i}"));
    }
    let status = notices.for_status();
    assert_eq!(status.len(), 16);
    assert_eq!(status[0], "CUDA is not used: no device");
    assert_eq!(status[15], "warning 39");
}
