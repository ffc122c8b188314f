//! Frames written to a worker: request frames, never left half-written, and the answers to its
//! INFER frames (`onnx_client.predict`), which the inference service runs either at once or on
//! its engine thread, which then writes the reply frame itself.

use super::*;

/// Answers an INFER frame from a serving worker.
pub(super) fn answer_infer(
    shared: &Shared,
    conn: &Arc<Conn>,
    frame: Frame,
) -> Result<(), RuntimeError> {
    let id = frame.id;
    let call = tensor_frame::decode_call(&frame.body).map_err(RuntimeError::Protocol)?;
    let (service, model) = match resolve(&shared.config, &call) {
        Ok(found) => found,
        Err(e) => {
            send_reply(conn, infer_reply(id, Err(e))?, &shared.runtime);
            return Ok(());
        }
    };
    let (conn, runtime) = (conn.clone(), shared.runtime.clone());
    service.submit(model, call.inputs, call.policy, move |outputs| {
        // Called here or on the engine thread (see the service's documentation).
        match infer_reply(id, outputs) {
            Ok(reply) => send_reply(&conn, reply, &runtime),
            // Outputs too large for a frame: as for any reply that cannot be written, the
            // worker is restarted.
            Err(_) => conn.broken.notify_one(),
        }
    });
    Ok(())
}

/// The service and the model an INFER call goes to (the model as `onnx_client` names it).
pub(super) fn resolve<'a>(
    config: &'a WorkerConfig,
    call: &InferCall,
) -> Result<(&'a InferenceService, &'a str), InferenceError> {
    let service = config
        .tensors
        .as_ref()
        .ok_or_else(|| InferenceError::Internal("this API has no ONNX models".into()))?;
    let model = service.select(call.model.as_deref())?;
    Ok((service, model.name.as_str()))
}

/// The reply frame to an INFER frame: INFER_RESULT or INFER_ERROR.
pub(super) fn infer_reply(
    id: u64,
    outputs: Result<Vec<gyrus_engine::Tensor>, InferenceError>,
) -> Result<Vec<u8>, RuntimeError> {
    let (kind, reply) = match outputs {
        Ok(outputs) => (
            protocol::INFER_RESULT,
            tensor_frame::encode_outputs(&outputs),
        ),
        Err(e) => (
            protocol::INFER_ERROR,
            tensor_frame::encode_error(tensor_frame::error_kind(&e), &e.to_string()),
        ),
    };
    protocol::encode_frame(kind, id, &reply)
}

/// Writes a reply frame to a serving worker without blocking: from the reader task, or from
/// the engine thread (the writes that must wait continue on `runtime`).
pub(super) fn send_reply(conn: &Arc<Conn>, reply: Vec<u8>, runtime: &Handle) {
    match conn.writer.clone().try_lock_owned() {
        Ok(writer) => {
            if write_request(conn, writer, reply, Bytes::new(), runtime).is_err() {
                conn.broken.notify_one();
            }
        }
        Err(_) => {
            let conn = conn.clone();
            runtime.spawn(async move {
                let mut writer = conn.writer.clone().lock_owned().await;
                if writer.write_all(&reply).await.is_err() {
                    conn.broken.notify_one();
                }
            });
        }
    }
}

/// Writes a request frame without ever leaving half a frame behind: what the socket takes at
/// once is written here, and if it is full the rest is finished by a task on `runtime` the
/// caller cannot cancel, still holding the writer lock. Callable from any thread.
pub(super) fn write_request(
    conn: &Arc<Conn>,
    writer: OwnedMutexGuard<OwnedWriteHalf>,
    head: Vec<u8>,
    body: Bytes,
    runtime: &Handle,
) -> std::io::Result<()> {
    let total = head.len() + body.len();
    let mut done = 0;
    while done < total {
        let result = if done < head.len() {
            writer.try_write_vectored(&[IoSlice::new(&head[done..]), IoSlice::new(&body)])
        } else {
            writer.try_write(&body[done - head.len()..])
        };
        match result {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let conn = conn.clone();
                runtime.spawn(async move {
                    let mut writer = writer;
                    let result = async {
                        if done < head.len() {
                            writer.write_all(&head[done..]).await?;
                            writer.write_all(&body).await
                        } else {
                            writer.write_all(&body[done - head.len()..]).await
                        }
                    }
                    .await;
                    if result.is_err() {
                        conn.broken.notify_one();
                    }
                });
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
