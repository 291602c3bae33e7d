// Bundle entry for the controller's workflow worker.
export { inventoryWorkflow } from './inventory';
export { migrationWorkflow } from './migration';
export { vmCommandWorkflow } from './vm';
export { hostRegistryWorkflow } from './registry';
export { pingLoopWorkflow } from './ping';
export { evacuationWorkflow } from './evacuation';
