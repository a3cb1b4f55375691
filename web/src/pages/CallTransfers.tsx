/** A call's transfers to a person (GET /v1/calls/:id `transfers`): who, how, by whom, and what came of it. */
import { time } from '../format';
import type { TransferRecord } from '../schemas';
import { Badge } from '../ui';

const BY: Record<string, string> = { api: 'the API / console', tool: 'the agent', dtmf: 'a keypad hotkey' };

export function CallTransfers(props: { transfers: TransferRecord[] | undefined }) {
  const list = props.transfers ?? [];
  if (list.length === 0) return null;
  return (
    <div class="card" aria-labelledby="transfers-title">
      <h2 id="transfers-title">Transfers</h2>
      <div class="table-wrap">
        <table class="transfers">
          <thead>
            <tr>
              <th scope="col">At</th>
              <th scope="col">Target</th>
              <th scope="col">To</th>
              <th scope="col">Mode</th>
              <th scope="col">By</th>
              <th scope="col">Outcome</th>
              <th scope="col">Returned</th>
            </tr>
          </thead>
          <tbody>
            {list.map((t) => (
              <tr key={t.transferId} data-transfer-id={t.transferId}>
                <td>{time(t.requestedAt)}</td>
                <td>{t.target ?? <span class="muted">a number</span>}</td>
                <td class="mono">{t.to}</td>
                <td>{t.mode}</td>
                <td>{BY[t.by] ?? t.by}</td>
                <td>
                  <Badge value={t.outcome} />
                </td>
                <td>{t.returned ? 'yes: back with the agent' : 'no'}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}
