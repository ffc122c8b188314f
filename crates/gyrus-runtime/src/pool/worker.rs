//! One worker process of the pool: starting it (INIT, then READY or INIT_FAILED), serving its
//! frames (responses, and INFER calls for the engine), and supervising it: restarting it with
//! backoff when it dies, and counting the quick exits that make the pool crash-looping.

use super::*;

pub(super) fn init_body(
    config: &WorkerConfig,
    threads: usize,
    index: usize,
) -> Result<Vec<u8>, RuntimeError> {
    let mut init = match &config.init {
        serde_json::Value::Object(map) => map.clone(),
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            return Err(RuntimeError::Protocol(format!(
                "INIT must be a JSON object, not {other}"
            )))
        }
    };
    init.insert("worker_index".into(), index.into());
    init.insert("threads".into(), threads.into());
    serde_json::to_vec(&init)
        .map_err(|e| RuntimeError::Protocol(format!("cannot encode INIT: {e}")))
}

/// Starts worker `index` and waits for READY.
pub(super) async fn launch(
    config: &WorkerConfig,
    threads: usize,
    index: usize,
) -> Result<Started, RuntimeError> {
    let init = protocol::encode_frame(protocol::INIT, 0, &init_body(config, threads, index)?)?;
    let (mut child, stream) = crate::process::spawn(config).await?;
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read);
    // A worker that dies at once closes the socket; the read below then reports how it died.
    let _ = write.write_all(&init).await;

    loop {
        let frame = next_init_frame(&mut reader, &mut child, index).await?;
        if frame.kind != protocol::INFER {
            return started(frame, child, reader, write, threads, index);
        }
        // The constructor may call onnx_client.predict (a warm-up, say).
        let call = tensor_frame::decode_call(&frame.body).map_err(RuntimeError::Protocol)?;
        let outputs = match resolve(config, &call) {
            Ok((service, model)) => service.infer(model, call.inputs, call.policy).await,
            Err(e) => Err(e),
        };
        let reply = infer_reply(frame.id, outputs)?;
        if write.write_all(&reply).await.is_err() {
            return Err(RuntimeError::WorkerExited {
                worker: index,
                detail: "closed its connection before it was ready".into(),
            });
        }
    }
}

/// The next frame from a worker that is starting, or how it died.
pub(super) async fn next_init_frame(
    reader: &mut FrameReader,
    child: &mut Child,
    index: usize,
) -> Result<Frame, RuntimeError> {
    let frame = tokio::select! {
        frame = reader.next() => frame,
        status = child.wait() => {
            // It may have answered just before exiting (INIT_FAILED is followed by exit 1).
            match timeout(DRAIN_AFTER_EXIT, reader.next()).await {
                Ok(Ok(Some(frame))) => Ok(Some(frame)),
                _ => {
                    let detail = match status {
                        Ok(status) => format!("{status} before it was ready"),
                        Err(e) => format!("could not be waited for: {e}"),
                    };
                    return Err(RuntimeError::WorkerExited { worker: index, detail });
                }
            }
        }
    };
    let frame = match frame {
        Ok(Some(frame)) => frame,
        Ok(None) | Err(RuntimeError::Io(_)) => {
            let status = match timeout(EXIT_WAIT, child.wait()).await {
                Ok(Ok(status)) => status.to_string(),
                _ => "closed its connection".to_string(),
            };
            return Err(RuntimeError::WorkerExited {
                worker: index,
                detail: format!("{status} before it was ready"),
            });
        }
        Err(e) => return Err(e),
    };
    Ok(frame)
}

/// READY makes a started worker; INIT_FAILED and anything else are errors.
pub(super) fn started(
    frame: Frame,
    child: Child,
    reader: FrameReader,
    write: OwnedWriteHalf,
    threads: usize,
    index: usize,
) -> Result<Started, RuntimeError> {
    match frame.kind {
        protocol::READY => {
            let ready: Ready = serde_json::from_slice(&frame.body).map_err(|e| {
                RuntimeError::Protocol(format!("invalid READY from worker {index}: {e}"))
            })?;
            let conn = Arc::new(Conn {
                writer: Arc::new(tokio::sync::Mutex::new(write)),
                pending: Mutex::new(Some(HashMap::with_capacity(threads * 2))),
                busy: AtomicUsize::new(0),
                broken: Notify::new(),
            });
            Ok(Started {
                child,
                reader,
                conn,
                ready,
            })
        }
        protocol::INIT_FAILED => {
            let failed: InitFailed = serde_json::from_slice(&frame.body).map_err(|e| {
                RuntimeError::Protocol(format!("invalid INIT_FAILED from worker {index}: {e}"))
            })?;
            Err(RuntimeError::InitFailed {
                worker: index,
                error: failed.error,
                traceback: failed.traceback,
            })
        }
        kind => Err(RuntimeError::Protocol(format!(
            "worker {index} sent frame kind {kind} instead of READY"
        ))),
    }
}

/// Why a serving worker stopped.
pub(super) enum End {
    /// The process exited (status known).
    Exited(std::process::ExitStatus),
    /// The socket closed, or the stream became unusable; the process must be reaped or killed.
    Lost(String),
    /// Shutdown's grace period is over.
    Deadline,
}

/// Serves one worker, then restarts it whenever it dies, until shutdown.
pub(super) async fn supervise(shared: Arc<Shared>, index: usize, mut started: Started) {
    let first_backoff = shared.config.restart_backoff.min(MAX_BACKOFF);
    let mut backoff = first_backoff;
    loop {
        let up_since = Instant::now();
        let Started {
            mut child,
            mut reader,
            conn,
            ready,
        } = started;
        shared.slots[index].health().up_since = Some(up_since);
        shared.slots[index].set(Some(conn.clone()));
        shared.freed.notify_waiters();

        let end = serve(&shared, &conn, &mut reader, &mut child).await;
        shared.slots[index].set(None);
        let status = match end {
            End::Exited(status) => status.to_string(),
            End::Deadline => {
                let _ = child.kill().await;
                "killed at the end of shutdown".to_string()
            }
            End::Lost(why) => match timeout(EXIT_WAIT, child.wait()).await {
                Ok(Ok(status)) => status.to_string(),
                _ => {
                    let _ = child.kill().await;
                    format!("{why}; killed")
                }
            },
        };
        let closing = shared.closing.load(Ordering::SeqCst);
        let requests = conn.pending().take().unwrap_or_default();
        for (_, tx) in requests {
            let _ = tx.send(Err(if closing {
                RuntimeError::ShuttingDown
            } else {
                RuntimeError::WorkerExited {
                    worker: index,
                    detail: status.clone(),
                }
            }));
        }
        if closing {
            return;
        }
        let quick = up_since.elapsed() < STABLE_AFTER;
        if !quick {
            backoff = first_backoff;
        }
        tracing::warn!(
            "worker {index} (pid {}) exited ({status}); restarting in {backoff:?}",
            ready.pid,
        );
        let quick_exits = shared.record_exit(index, quick, status, backoff);
        report_crash_loop(index, quick_exits);
        started = loop {
            tokio::select! {
                _ = sleep(backoff) => {}
                _ = shared.closing() => return,
            }
            let delay = backoff;
            backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
            let result = tokio::select! {
                result = launch(&shared.config, shared.threads, index) => result,
                _ = shared.closing() => return,
            };
            match result {
                Ok(started) => {
                    tracing::info!("worker {index} restarted (pid {})", started.ready.pid);
                    break started;
                }
                Err(e) => {
                    tracing::warn!(
                        "worker {index} failed to restart after {delay:?}: {e}; retrying in {backoff:?}"
                    );
                    let detail = match e {
                        RuntimeError::WorkerExited { detail, .. } => detail,
                        other => other.to_string(),
                    };
                    // A predictor that now fails to construct is as stuck as one that crashes.
                    let quick_exits = shared.record_exit(index, true, detail, backoff);
                    report_crash_loop(index, quick_exits);
                }
            }
        };
    }
}

/// Says so in the log once, when a worker's quick exits reach the crash-loop threshold.
pub(super) fn report_crash_loop(index: usize, quick_exits: u32) {
    if quick_exits == CRASH_LOOP_EXITS {
        tracing::warn!(
            "worker {index} keeps crashing ({quick_exits} exits in a row within {}s of \
             starting); when every worker does, requests fail at once while none is up",
            STABLE_AFTER.as_secs()
        );
    }
}

/// Reads and dispatches responses until the worker goes away.
pub(super) async fn serve(
    shared: &Shared,
    conn: &Arc<Conn>,
    reader: &mut FrameReader,
    child: &mut Child,
) -> End {
    // Created once: these are polled on every wake-up of the loop below.
    let exited = child.wait();
    let broken = conn.broken.notified();
    let deadline = shared.past_deadline();
    tokio::pin!(exited, broken, deadline);
    loop {
        loop {
            match reader.next_buffered() {
                Ok(Some(frame)) => {
                    if let Err(e) = shared.dispatch(conn, frame) {
                        return End::Lost(e.to_string());
                    }
                }
                Ok(None) => break,
                Err(e) => return End::Lost(e.to_string()),
            }
        }
        tokio::select! {
            biased;
            read = reader.fill() => match read {
                Ok(0) => return End::Lost("closed its connection".into()),
                Ok(_) => {}
                Err(e) => return End::Lost(format!("read error: {e}")),
            },
            status = &mut exited => {
                // Deliver responses it wrote just before exiting.
                let _ = timeout(DRAIN_AFTER_EXIT, async {
                    while let Ok(Some(frame)) = reader.next().await {
                        if shared.dispatch(conn, frame).is_err() {
                            break;
                        }
                    }
                })
                .await;
                return match status {
                    Ok(status) => End::Exited(status),
                    Err(e) => End::Lost(format!("wait failed: {e}")),
                };
            }
            _ = &mut broken => return End::Lost("a request could not be written".into()),
            _ = &mut deadline => return End::Deadline,
        }
    }
}
