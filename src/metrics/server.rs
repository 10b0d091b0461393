//! The HTTP endpoint: one thread answering `/metrics`, `/healthz` and
//! `/ready` (see [`super`]).

use std::sync::Arc;

use tiny_http::{Header, Response, Server};

use super::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `metrics` at `listen` on a thread of its own for the life of the
/// process. Billing does not depend on being watched: when the address is
/// taken or empty, the run goes on without the endpoint and says so.
pub fn serve(listen: &str, metrics: Arc<Metrics>) {
    if listen.is_empty() {
        tracing::info!("metrics.listen is empty: no metrics endpoint");
        return;
    }
    let server = match Server::http(listen) {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(listen, %error, "cannot serve metrics; running without the endpoint");
            return;
        }
    };
    let address = server.server_addr().to_ip().map_or_else(|| listen.to_owned(), |a| a.to_string());
    tracing::info!(address, "serving /metrics, /healthz and /ready");
    let spawned = std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for request in server.incoming_requests() {
            let path = request.url().split('?').next().unwrap_or_default().to_owned();
            let response = match path.as_str() {
                "/metrics" => Response::from_string(metrics.encode()).with_header(content_type(OPENMETRICS)),
                "/healthz" => Response::from_string("alive\n"),
                "/ready" if metrics.ready() => Response::from_string("ready\n"),
                "/ready" => Response::from_string("restoring\n").with_status_code(503),
                _ => Response::from_string("not found: try /metrics, /healthz or /ready\n").with_status_code(404),
            };
            if let Err(error) = request.respond(response) {
                tracing::debug!(%error, "metrics client went away");
            }
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the metrics thread; running without the endpoint");
    }
}

fn content_type(value: &str) -> Header {
    Header::from_bytes(&b"Content-Type"[..], value.as_bytes()).expect("a valid header")
}
