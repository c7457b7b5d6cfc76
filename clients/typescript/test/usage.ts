// Compile-time checks of the published types (npm run typecheck); never run.
import { createATL, ATLApprovalError, ATLError, type ExecuteDecision, type FinalApproval } from "@asi/agent-trust-layer";

async function usage(domain: string, baseUrl: string, apiKey: string): Promise<void> {
  const workflow = "trip";
  const agent = "booker";
  const tool = "search";
  const args = { q: "Lisbon" };

  // The seed's snippet, as written.
  const atl = createATL({ domain, baseUrl, apiKey });
  const result = await atl.execute({ workflow, agent, tool, args });

  // The answer is a discriminated union: the held fields exist only after narrowing.
  const decision: ExecuteDecision = result;
  if (decision.kind === "held") {
    const id: string = decision.approvalRequestId;
    const raw: "pending_approval" = decision.status;
    const approval: FinalApproval = await atl.waitForApproval(id, { timeoutMs: 60_000 });
    // @ts-expect-error a final approval is never PENDING
    const pending: "PENDING" = approval.status;
    void raw;
    void pending;
  } else {
    const eventId: string = decision.event_id;
    // @ts-expect-error a done answer has no approvalRequestId
    void decision.approvalRequestId;
    void eventId;
  }

  // wrap keeps the tool's argument and result types.
  const book = atl.wrap("bookings.create", async (a: { hotel: string; nights: number }) => ({ ok: true, id: a.hotel }));
  const booked: { ok: boolean; id: string } = await book({ hotel: "H-1", nights: 2 });
  // @ts-expect-error nights must be a number
  await book({ hotel: "H-1", nights: "two" });
  void booked;

  // @ts-expect-error tool is required
  await atl.execute({ agent, args });
  // @ts-expect-error trust levels are L0 to L4
  await atl.execute({ agent, tool, trust_level: "L5" });
  // @ts-expect-error a decision is APPROVE or REJECT
  await atl.decide("id", "MAYBE");
  // @ts-expect-error an event needs a status
  await atl.reportEvents({ tool_name: "search" });

  try {
    await atl.execute({ agent, tool, args });
  } catch (err) {
    if (err instanceof ATLApprovalError) {
      const s: "REJECTED" | "EXPIRED" = err.approvalStatus;
      void s;
    } else if (err instanceof ATLError) {
      const code: string = err.code;
      const status: number = err.status;
      const retry: number | undefined = err.retryAfter;
      void code, status, retry;
    }
  }
}
void usage;
