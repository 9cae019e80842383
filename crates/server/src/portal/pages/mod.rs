//! Page and fragment handlers, a file per page: each gathers what one page
//! shows from the controller, narrowed to the viewer, and renders its
//! template. What pages share (rendering, the layout, the error page) is in
//! the leaf [`common`]; rows several pages show live with their page
//! ([`alerts`], [`jobs`], [`vms`], the measure chart in [`drills`]).

mod alerts;
mod common;
mod dashboard;
mod drills;
mod groups;
mod incidents;
mod jobs;
mod login;
mod report;
mod templates;
mod vm;
mod vms;

pub(crate) use alerts::{alerts, alerts_fragment};
pub(crate) use common::error_page;
pub(crate) use dashboard::{dashboard, dashboard_fragment};
pub(crate) use drills::{drills, drills_fragment};
pub(crate) use groups::{groups, groups_fragment};
pub(crate) use incidents::{incident, incident_fragment, incidents, incidents_fragment};
pub(crate) use jobs::{job, job_fragment, jobs, jobs_fragment};
pub(crate) use login::login;
pub(crate) use report::reports;
pub(crate) use templates::{templates, templates_fragment};
pub(crate) use vm::{vm, vm_fragment};
pub(crate) use vms::{vms, vms_fragment};
