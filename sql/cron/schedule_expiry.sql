-- Optional: let pg_cron expire stale approval requests every minute.
--
-- Not a migration (tern reads only the numbered files at the top of sql/).
-- A DBA runs it once, as a superuser, in the database pg_cron runs in
-- (cron.database_name, normally postgres), naming the ATL database:
--
--   psql -d postgres -v atl_db=atl -f sql/cron/schedule_expiry.sql
--
-- Optional: -v atl_user=<role> runs the job as that role instead of the one
-- running this script. It must be able to log in to atl_db and be a member of
-- atl_worker (grant atl_worker to <role>): with no tenant set,
-- atl.expire_stale_approvals() sweeps every tenant, which only atl_worker may
-- do; the runtime role atl_app may not.
--
-- Needs pg_cron 1.4 or later (cron.schedule_in_database), loaded with
-- shared_preload_libraries = 'pg_cron' and created with
-- CREATE EXTENSION pg_cron in this database (.ci/setup-pg-cron.sh does both
-- on a Debian host). Running the script again replaces the job. It is
-- unscheduled first rather than upserted by name: pg_cron 1.4 (Debian 12's
-- package) updates the schedule and command of an existing job name but not
-- its database.
--
-- The job calls select atl.expire_stale_approvals() with no app.tenant_id set,
-- which sweeps every tenant. Its runs are in cron.job_run_details:
--
--   select status, return_message, start_time from cron.job_run_details
--   where jobid = (select jobid from cron.job where jobname = 'atl_expire_stale_approvals')
--   order by start_time desc limit 5;
--
-- To stop it: select cron.unschedule('atl_expire_stale_approvals');

\set ON_ERROR_STOP on

\if :{?atl_db}
\else
  do $$ begin
    raise exception 'psql variable atl_db is not set'
      using hint = 'psql -d postgres -v atl_db=<ATL database> -f sql/cron/schedule_expiry.sql';
  end $$;
\endif

\if :{?atl_user}
\else
  select current_user as atl_user \gset
\endif

begin;

select cron.unschedule(jobid)
from cron.job
where jobname = 'atl_expire_stale_approvals' and username = :'atl_user';

select cron.schedule_in_database(
  'atl_expire_stale_approvals',
  '* * * * *',
  'select atl.expire_stale_approvals()',
  :'atl_db',
  :'atl_user') as jobid;

commit;

select jobid, jobname, schedule, command, database, username, active
from cron.job
where jobname = 'atl_expire_stale_approvals' and username = :'atl_user';
