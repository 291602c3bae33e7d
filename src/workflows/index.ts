// Bundle entry for the controller's workflow worker.
export { inventoryWorkflow } from './inventory';
