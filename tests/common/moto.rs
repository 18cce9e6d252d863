//! A real moto server for tests: started on a free loopback port, stopped on drop.
//!
//! Needs `moto_server` from `pip install 'moto[server]'` (5.x) on PATH, or its path in
//! `MOTO_SERVER`. Batch runs without Docker (`use_docker: false`): a submitted job is SUCCEEDED
//! (or FAILED when the server runs with `MOTO_SIMPLE_BATCH_FAIL_AFTER=0`) before SubmitJob returns.

// Test tooling: a failed setup step must stop the test loudly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_batch::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_batch::config::{ConfigBag, Credentials, Intercept, RuntimeComponents};
use aws_sdk_batch::error::BoxError;
use aws_sdk_batch::types::{
    CeState, CeType, ComputeEnvironmentOrder, ContainerProperties, JobDefinitionType, JqState, ResourceRequirement,
    ResourceType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ACCOUNT: &str = "123456789012";
pub const QUEUE: &str = "mab-test-queue";
pub const JOB_DEFINITION: &str = "mab-builder";

pub struct Moto {
    child: Child,
    log: tempfile::NamedTempFile,
    pub port: u16,
    pub url: String,
}

impl Moto {
    /// Starts moto with Batch in non-Docker mode; jobs succeed at once.
    pub async fn start() -> Moto {
        Moto::start_with_env(&[]).await
    }

    /// Starts moto with extra environment for the server process.
    pub async fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("temp file for the moto log");
        let mut command = Command::new(&program);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("moto log"))
            .stderr(log.reopen().expect("moto log"));
        for (k, v) in env {
            command.env(k, v);
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{program}` not found: these tests need a real moto server. Install it with \
                 `pip install 'moto[server]'` (or set MOTO_SERVER to its path)."
            ),
            Err(e) => panic!("cannot start `{program}`: {e}"),
        };
        let mut moto = Moto {
            child,
            log,
            port,
            url: format!("http://127.0.0.1:{port}"),
        };
        moto.wait_ready().await;
        let (status, body) = moto
            .http(
                "POST",
                "/moto-api/config",
                &[("Content-Type", "application/json")],
                br#"{"batch": {"use_docker": false}}"#,
            )
            .await;
        assert!((200..300).contains(&status), "moto config: HTTP {status} {body}");
        assert!(body.contains(r#""use_docker": false"#), "moto config: {body}");
        moto
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moto_server exited with {status}: {}", self.log_text());
            }
            if let Ok((200, _)) =
                tokio::time::timeout(Duration::from_secs(2), self.http("GET", "/moto-api/", &[], b"")).await
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "moto_server did not answer on port {} within 30 s: {}",
                    self.port,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        let _ = self.log.reopen().and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    /// A bare HTTP/1.1 request to moto (its own API and the IAM query API, which the Batch tests
    /// need but the crate has no SDK for). Returns status and body.
    pub async fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return (0, String::new());
        };
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        if stream.write_all(&bytes).await.is_err() {
            return (0, String::new());
        }
        let mut response = Vec::new();
        if stream.read_to_end(&mut response).await.is_err() {
            return (0, String::new());
        }
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// SDK configuration pointing at this moto, static credentials, us-east-1.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
            .load()
            .await
    }

    /// Batch and Logs clients; every Batch request passes through `recorder`.
    pub async fn clients(&self, recorder: &Recorder) -> (aws_sdk_batch::Client, aws_sdk_cloudwatchlogs::Client) {
        let config = self.sdk_config().await;
        let batch = aws_sdk_batch::Client::from_conf(
            aws_sdk_batch::config::Builder::from(&config)
                .interceptor(recorder.clone())
                .build(),
        );
        (batch, aws_sdk_cloudwatchlogs::Client::new(&config))
    }

    /// An IAM role (moto checks a compute environment's service role exists), an unmanaged
    /// compute environment, the job queue [`QUEUE`] and the job definition [`JOB_DEFINITION`].
    pub async fn create_batch_environment(&self, batch: &aws_sdk_batch::Client) {
        let (status, body) = self
            .http(
                "POST",
                "/",
                &[
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    (
                        "Authorization",
                        "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
                    ),
                ],
                b"Action=CreateRole&Version=2010-05-08&RoleName=mab-batch-service&AssumeRolePolicyDocument=%7B%7D",
            )
            .await;
        assert_eq!(status, 200, "IAM CreateRole: {body}");
        batch
            .create_compute_environment()
            .compute_environment_name("mab-test-ce")
            .r#type(CeType::Unmanaged)
            .state(CeState::Enabled)
            .service_role(format!("arn:aws:iam::{ACCOUNT}:role/mab-batch-service"))
            .send()
            .await
            .expect("CreateComputeEnvironment");
        batch
            .create_job_queue()
            .job_queue_name(QUEUE)
            .state(JqState::Enabled)
            .priority(1)
            .compute_environment_order(
                ComputeEnvironmentOrder::builder()
                    .order(1)
                    .compute_environment("mab-test-ce")
                    .build(),
            )
            .send()
            .await
            .expect("CreateJobQueue");
        batch
            .register_job_definition()
            .job_definition_name(JOB_DEFINITION)
            .r#type(JobDefinitionType::Container)
            .container_properties(
                ContainerProperties::builder()
                    .image("multiarch-builder:test")
                    .resource_requirements(
                        ResourceRequirement::builder()
                            .r#type(ResourceType::Vcpu)
                            .value("1")
                            .build(),
                    )
                    .resource_requirements(
                        ResourceRequirement::builder()
                            .r#type(ResourceType::Memory)
                            .value("512")
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .expect("RegisterJobDefinition");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Records every HTTP request the SDK transmits (retries included): the operation (last path
/// segment, e.g. `describejobs`) and the body.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    requests: Arc<Mutex<Vec<Recorded>>>,
}

/// One transmitted request: operation and body.
type Recorded = (String, Vec<u8>);

impl Recorder {
    /// How many requests went to `operation` (lowercase REST path segment, e.g. `describejobs`).
    pub fn count(&self, operation: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(op, _)| op == operation)
            .count()
    }

    /// The JSON bodies sent to `operation`.
    pub fn bodies(&self, operation: &str) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(op, _)| op == operation)
            .map(|(_, body)| serde_json::from_slice(body).unwrap_or(serde_json::Value::Null))
            .collect()
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "test-request-recorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let path = request.uri().split('?').next().unwrap_or_default();
        let operation = path.rsplit('/').next().unwrap_or_default().to_owned();
        let body = request.body().bytes().unwrap_or_default().to_vec();
        self.requests.lock().unwrap().push((operation, body));
        Ok(())
    }
}

/// Writes `lines` as a new log stream of the Batch log group, as a job's container would have.
pub async fn put_log_lines(logs: &aws_sdk_cloudwatchlogs::Client, stream: &str, lines: &[String]) {
    let _ = logs.create_log_group().log_group_name("/aws/batch/job").send().await;
    logs.create_log_stream()
        .log_group_name("/aws/batch/job")
        .log_stream_name(stream)
        .send()
        .await
        .unwrap();
    // CloudWatch Logs (and moto) refuse events older than 14 days: use the current time.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 60_000;
    let events = lines.iter().enumerate().map(|(i, line)| {
        aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
            .timestamp(start + i as i64)
            .message(line)
            .build()
            .unwrap()
    });
    logs.put_log_events()
        .log_group_name("/aws/batch/job")
        .log_stream_name(stream)
        .set_log_events(Some(events.collect()))
        .send()
        .await
        .unwrap();
}
