//! The PostgreSQL sink: results (`<ns>.sink.postgres.results`) and job histories
//! (`<ns>.sink.postgres.status`), each acked only once committed.

use deadpool_postgres::Pool;
use taskbot::amqp::{DeliveryContext, Disposition, Handler, Incoming};

use crate::{decode_result, decode_status, store_failure};
use taskbot::store::{self, StoreError};

/// Stores results.
pub struct ResultsHandler {
    pub pool: Pool,
}

impl ResultsHandler {
    /// Handle one delivery: decode and store (a redelivery finds its row and changes nothing).
    pub async fn process(&self, body: &[u8]) -> Disposition {
        let result = match decode_result(body) {
            Ok(r) => r,
            Err(reason) => return Disposition::DeadLetter(reason),
        };
        let what = format!("result {}", result.result_id);
        let client = match self.pool.get().await {
            Ok(c) => c,
            Err(err) => return store_failure(&what, &StoreError::from(err)),
        };
        match store::insert_result(&client, &result).await {
            Ok(true) => {
                tracing::info!(result_id = %result.result_id, job_id = %result.job_id,
                testcase = %result.testcase, outcome = %result.outcome, item = %result.item,
                arch = %result.arch, "result stored");
                Disposition::Done(Vec::new())
            }
            Ok(false) => {
                tracing::info!(result_id = %result.result_id, "result already stored (redelivery)");
                Disposition::Done(Vec::new())
            }
            Err(err) => store_failure(&what, &err),
        }
    }
}

#[async_trait::async_trait]
impl Handler for ResultsHandler {
    async fn handle(&self, incoming: Incoming, _ctx: &dyn DeliveryContext) -> Disposition {
        self.process(&incoming.body).await
    }
}

/// Records job statuses: each job's current state and its full history.
pub struct StatusHandler {
    pub pool: Pool,
}

impl StatusHandler {
    pub async fn process(&self, body: &[u8]) -> Disposition {
        let status = match decode_status(body) {
            Ok(s) => s,
            Err(reason) => return Disposition::DeadLetter(reason),
        };
        let what = format!("status {} of job {}", status.status_id, status.job_id);
        let mut client = match self.pool.get().await {
            Ok(c) => c,
            Err(err) => return store_failure(&what, &StoreError::from(err)),
        };
        match store::record_status(&mut client, &status).await {
            Ok(write) => {
                tracing::info!(job_id = %status.job_id, state = %status.state, service = %status.service,
                    new_event = write.new_event, job_updated = write.job_updated, "job status recorded");
                Disposition::Done(Vec::new())
            }
            Err(err) => store_failure(&what, &err),
        }
    }
}

#[async_trait::async_trait]
impl Handler for StatusHandler {
    async fn handle(&self, incoming: Incoming, _ctx: &dyn DeliveryContext) -> Disposition {
        self.process(&incoming.body).await
    }
}
