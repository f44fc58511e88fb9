//! The PostgreSQL sink: results (`<ns>.sink.postgres.results`) and job histories
//! (`<ns>.sink.postgres.status`), each acked only once committed.

use std::sync::Arc;

use deadpool_postgres::Pool;
use taskbot::amqp::{DeliveryContext, Disposition, Handler, Incoming};

use crate::binding::Binding;
use crate::{decode_result, decode_status, store_failure};
use taskbot::store::{self, StoreError};

/// Stores results.
pub struct ResultsHandler {
    pub pool: Pool,
    /// Whether a result is its job's and from its sender ([`Binding`]).
    pub binding: Arc<Binding>,
}

impl ResultsHandler {
    /// Handle one delivery: decode, check it is its job's, and store (a redelivery finds its row
    /// and changes nothing).
    pub async fn process(&self, incoming: &Incoming) -> Disposition {
        let result = match decode_result(&incoming.body) {
            Ok(r) => r,
            Err(reason) => return Disposition::DeadLetter(reason),
        };
        let user = incoming.user_id.as_deref();
        if let Err(refused) = self.binding.admit_result(user, &result).await {
            return refused;
        }
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
        self.process(&incoming).await
    }
}

/// Records job statuses: each job's current state and its full history, and the job records
/// the binding checks against (its request at `queued`, its dispatch at `provisioned`).
pub struct StatusHandler {
    pub pool: Pool,
    pub binding: Arc<Binding>,
}

impl StatusHandler {
    pub async fn process(&self, incoming: &Incoming) -> Disposition {
        let status = match decode_status(&incoming.body) {
            Ok(s) => s,
            Err(reason) => return Disposition::DeadLetter(reason),
        };
        let user = incoming.user_id.as_deref();
        if let Err(refused) = self.binding.admit_status(user, &status, true).await {
            return refused;
        }
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
        self.process(&incoming).await
    }
}
