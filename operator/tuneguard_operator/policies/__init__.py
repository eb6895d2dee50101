"""The policies that plan one FineTuneJob's next step, one module each.

status.decide asks them in a fixed order and takes the first Verdict it gets; each policy may
therefore assume that the ones before it declined (returned None), and the last always answers:

  terminal.sticky         a Succeeded or Failed job stays so
  success.completed       the current worker Job completed
  deadline.exceeded       runPolicy.activeDeadlineSeconds ran out
  group.create_missing    no worker Job: create one
  group.clear_stale       a Job of an earlier attempt: delete it and wait
  group.restart_failed    the current Job failed: restart the group or give up
  lost_node.restart_stuck a worker stuck Terminating on a lost node: restart the group (a disruption)
  suspend.suspend_or_queue  runPolicy.suspend, a resume, or (kueue.py) Kueue's admission
  workers.running         the workers start or run

Then ttl.after_finished and deadline.requeue adjust when to look again. Everything a policy reads
is in observed.Observed, everything it answers is an observed.Verdict.
"""
