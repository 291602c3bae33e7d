export * from './types';
export * from './convergence';
export * from './switch';
export * from './ferry-switch';
